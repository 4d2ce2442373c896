import sys

from captagent_tls.cli import main

sys.exit(main())
