from leakaudit.cli import main

main()
