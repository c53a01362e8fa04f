import sys

from imageselector.cli import main

sys.exit(main())
