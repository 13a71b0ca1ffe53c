from lmaas.cli import main

main()
