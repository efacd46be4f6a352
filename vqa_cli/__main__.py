from vqa_cli.cli import main

main()
