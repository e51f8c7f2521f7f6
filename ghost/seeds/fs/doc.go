// Package fs is the built-in seed.fs: write, read, delete and list files under one root
// directory (the Ghost's state directory). It owns the confinement of every path to that
// root: relative paths only, no "." or ".." elements, no way out through a symbolic link
// (checked on the resolved path, and again by the kernel through os.Root). It owns nothing
// outside the root and never runs a program.
package fs
