"""The jobs: what a command does, above the model and the output layers (ask, chat, caption, segments, eval).
"""
