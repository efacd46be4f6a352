"""The remote backend: a running ``vqa serve`` reached over HTTP (``client``); the settings on the wire are
``vqa_cli.wire``' (``request_fields``).
"""
