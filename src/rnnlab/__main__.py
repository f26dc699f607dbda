from rnnlab.cli import main

raise SystemExit(main())
