# Developer entry points. The logic lives in scripts/ so CI and people run the same thing.

.PHONY: test venv

# Extra pytest arguments, e.g. make test PYTEST_ARGS="-k settings"
PYTEST_ARGS ?=

test:
	bash scripts/test.sh $(PYTEST_ARGS)

venv:
	bash scripts/venv.sh
