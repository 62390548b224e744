"""The loops: training (``train``), evaluation (``evaluate``) and inference (``inference``)."""
