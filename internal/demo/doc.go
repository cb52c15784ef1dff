// Package demo runs `carryon demo`: the whole loop in one process, with a
// coordinator, two volunteer nodes and a puller on loopback in a fresh
// private swarm, over the embedded default base (model/embedded) and a
// generated set of arithmetic word problems (data.go).
package demo
