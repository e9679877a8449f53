from fastsvd.cli import main

main()
