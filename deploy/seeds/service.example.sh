#!/bin/sh
# The script of the example seed service.example (deploy/seeds/service.example.toml).
# The Ghost runs it as: /bin/sh FILE OPERATION [VALUE], with PATH fixed and no other
# environment. VALUE is one plain argument: nothing here evaluates it.
set -eu
case "${1:-}" in
status)
	echo "service.example ok on $(uname -n): $(uname -s) $(uname -r)"
	;;
greet)
	printf 'hello, %s\n' "$2"
	;;
check)
	echo "exiting with status $2"
	exit "$2"
	;;
*)
	echo "usage: service.example.sh status | greet NAME | check STATUS" >&2
	exit 64
	;;
esac
