// Command image is the only binary of the real test node's two images, which are built offline
// (no registry is reachable) by scripts/testenv as OCI archives and imported into containerd:
//
//   - the pod sandbox ("pause") image runs it as /pause: it sleeps until SIGTERM or SIGINT and
//     exits 0, as registry.k8s.io/pause does (it never reaps zombies: the test Pods here start
//     none);
//   - the test image runs it as /hello: it prints its arguments (or a greeting) and the
//     environment variable PLUMB_MESSAGE, optionally sleeps (`-sleep 2s`), and exits with the
//     code given by `-exit N`.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	if filepath.Base(os.Args[0]) == "pause" {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		<-sigs
		os.Exit(0)
	}
	sleep := flag.Duration("sleep", 0, "sleep this long before exiting")
	code := flag.Int("exit", 0, "exit code")
	flag.Parse()
	msg := strings.Join(flag.Args(), " ")
	if msg == "" {
		msg = "hello from plumb's test image"
	}
	fmt.Println(msg)
	if m := os.Getenv("PLUMB_MESSAGE"); m != "" {
		fmt.Println(m)
	}
	time.Sleep(*sleep)
	os.Exit(*code)
}
