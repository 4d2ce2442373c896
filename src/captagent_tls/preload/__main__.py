import sys

from captagent_tls.preload.command import main

sys.exit(main())
