from ecoserve.cli import main

main()
