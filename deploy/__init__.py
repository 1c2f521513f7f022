"""The deploy files the server needs at run time (nginx.conf, gunicorn.conf.py), installed
with the package as ``service.deploy``; the rest of deploy/ is for operators."""
