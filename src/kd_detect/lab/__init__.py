"""Makefile glue (``make train``/``compare``/``sweep``): ``python -m kd_detect.lab.<runner|compare|sweep>``."""
