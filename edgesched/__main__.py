import sys

from edgesched.commands.cli import main

sys.exit(main())
