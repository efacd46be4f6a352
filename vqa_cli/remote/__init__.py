"""The remote backend: a running ``vqa serve`` reached over HTTP (``client``) and the settings on the wire (``wire``).
"""
