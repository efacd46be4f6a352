"""The model layer: checkpoints, weights, families, modes, prompts and generation.

What a request needs from a checkpoint, below the jobs and above the frames: ``engine`` runs the stages
of one clip, ``session`` opens a request, ``families`` holds one adapter per model family. Torch and
transformers load inside the functions that need them.
"""
