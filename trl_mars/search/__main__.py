import sys

from trl_mars.search.cli import main

sys.exit(main())
