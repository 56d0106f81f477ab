# Developer entry points. The logic lives in scripts/ so CI and people run the same thing.

.PHONY: run test venv

# Extra pytest arguments, e.g. make test PYTEST_ARGS="-k settings"
PYTEST_ARGS ?=

test:
	bash scripts/test.sh $(PYTEST_ARGS)

# The demo on the embedded SQLite default: worker, live traffic and web server; Ctrl-C stops it.
run:
	bash scripts/run.sh

venv:
	bash scripts/venv.sh
