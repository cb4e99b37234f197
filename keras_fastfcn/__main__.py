import sys

from keras_fastfcn.cli import main

sys.exit(main())
