import sys

from cifar.study.cli import main

sys.exit(main())
