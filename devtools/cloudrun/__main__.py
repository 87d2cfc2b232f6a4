from devtools.cloudrun.cli import main

main()
