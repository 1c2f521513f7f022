"""Request and response codecs: payloads in, instances out; predictions in, payloads out."""
