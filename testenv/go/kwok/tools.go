//go:build tools

// Package tools only records which command of sigs.k8s.io/kwok this module builds.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
