"""A checkpoint's weights: ``hub`` (names -> folders, downloads), ``files`` (safetensors, read with their errors),
``copies`` (pre-quantized copies in vqa's cache) and ``loader`` (quantized, placed: what ``Engine`` receives)."""
