import sys

from igcam_fast.commands.cli import main

sys.exit(main())
