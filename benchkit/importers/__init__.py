"""Importers of released checkpoints, one module per official source (``mar``, ``kl16``, ``rq``), each a key map
plus shape checks; ``api`` writes the benchkit tokenizer and run directories (``import_tokenizer``,
``import_generator``) behind ``benchkit import``."""
