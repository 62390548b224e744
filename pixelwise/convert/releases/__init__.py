"""One module per released weight file, each defining ``RELEASE``; modules named ``_*`` hold what
several releases share. :mod:`pixelwise.convert.zoo` finds them all."""
