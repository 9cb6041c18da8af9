import sys

from wukong.lambda_local.server import main

sys.exit(main())
