from leetbench.cli import main

main()
