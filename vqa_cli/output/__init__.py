"""The output layer: records, the files vqa writes (``writer``), subtitles and contact sheets.

Nothing here loads a model; the jobs and the server build records here and write them through ``writer``.
"""
