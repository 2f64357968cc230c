import sys

from temalign.cli import main

sys.exit(main())
