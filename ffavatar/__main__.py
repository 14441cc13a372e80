"""``python -m ffavatar`` runs the ``ffavatar`` command line."""
import sys

from .cli import main

sys.exit(main())
