from vostool.cli.app import main

main()
