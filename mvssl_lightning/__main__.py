from mvssl_lightning.cli import main

main()
