// berth-streaming-interop drives berth's streaming server with crictl's own client code (cri-tools
// pkg/common: client-go's SPDY and WebSocket executors and port-forward dialers). Built inside a cri-tools
// checkout by build.sh, offline, from its vendor directory.
//
//	berth-streaming-interop exec spdy|websocket URL [tty]     stdio is the session's; exits with its code
//	berth-streaming-interop portforward spdy|websocket URL PORT   listens on 127.0.0.1 (printed), forwards to PORT
package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"

	"k8s.io/client-go/rest"
	remoteclient "k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/tools/portforward"
	utilexec "k8s.io/utils/exec"

	"sigs.k8s.io/cri-tools/pkg/common"
)

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: berth-streaming-interop exec|portforward spdy|websocket URL [tty|PORT]")
		os.Exit(2)
	}
	mode, transport, rawURL := os.Args[1], os.Args[2], os.Args[3]
	parsed, err := url.Parse(rawURL)
	if err != nil {
		fail(err)
	}
	tls := &rest.TLSClientConfig{}
	switch mode {
	case "exec":
		executor, err := common.GetExecutor(transport, parsed, tls)
		if err != nil {
			fail(err)
		}
		tty := len(os.Args) > 4 && os.Args[4] == "tty"
		opts := remoteclient.StreamOptions{Stdin: os.Stdin, Stdout: os.Stdout, Tty: tty}
		if !tty {
			opts.Stderr = os.Stderr
		}
		if tty {
			opts.TerminalSizeQueue = &fixedSize{}
		}
		err = executor.StreamWithContext(context.Background(), opts)
		var exitErr utilexec.ExitError
		if errors.As(err, &exitErr) && exitErr.Exited() {
			os.Exit(exitErr.ExitStatus())
		}
		if err != nil {
			fail(err)
		}
	case "portforward":
		dialer, err := common.GetDialer(transport, parsed, tls)
		if err != nil {
			fail(err)
		}
		ready := make(chan struct{})
		stop := make(chan struct{})
		pf, err := portforward.NewOnAddressesForStreaming(dialer, []string{"127.0.0.1"}, []string{"0:" + os.Args[4]}, stop, ready, os.Stderr, os.Stderr)
		if err != nil {
			fail(err)
		}
		go func() {
			<-ready
			ports, err := pf.GetPorts()
			if err != nil {
				fail(err)
			}
			fmt.Printf("listening %d\n", ports[0].Local)
		}()
		if err := pf.ForwardPorts(); err != nil {
			fail(err)
		}
	default:
		fail(fmt.Errorf("unknown mode %q", mode))
	}
}

type fixedSize struct{ sent bool }

func (f *fixedSize) Next() *remoteclient.TerminalSize {
	if f.sent {
		select {}
	}
	f.sent = true
	return &remoteclient.TerminalSize{Width: 123, Height: 45}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "interop:", err)
	os.Exit(100)
}
