import sys

from cifar.report.cli import main

sys.exit(main())
