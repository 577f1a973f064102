from cosmos_worker.protocol import main

if __name__ == "__main__":
    raise SystemExit(main())
