"""Real data for the tests that check a reader against the official files: the data home
(``PIXELWISE_DATA``, see :mod:`pixelwise.data.home`). Its ``samples/`` (a few official ADE20K and
VOC files), ``meta/`` (official class lists and split files) and dataset folders (``camvid/``) are
used where present; the tests that need them skip otherwise."""

from pixelwise.data.home import data_home

DATA = data_home()
