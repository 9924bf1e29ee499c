import sys

from trl_mars.eval.cli import main

sys.exit(main())
