from quiktool.cli import main

main()
