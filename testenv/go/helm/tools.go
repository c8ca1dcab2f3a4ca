//go:build tools

// Package tools only records which command of helm.sh/helm/v4 this module builds.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
