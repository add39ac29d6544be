package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/podmeta/podmeta/inject"
)

func injectCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("inject", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: podmeta-webhook inject -f FILE|- [--config FILE]

Applies podmeta's injection to every opted-in Pod and pod template (Deployment,
StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, ReplicationController,
PodTemplate, and items of a List) in a multi-document YAML file and prints the
result on standard output. Other documents are copied unchanged. Skips are
printed on standard error. Nothing is printed if any document is invalid.

`)
		fs.PrintDefaults()
	}
	file := fs.String("f", "", "manifest file to inject, - for standard input")
	configFile := fs.String("config", "", "injection config file (YAML), as for serve; default: built-in defaults")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("inject: unexpected arguments %q (the file goes after -f)", fs.Args())}
	}
	if *file == "" {
		return usageError{errors.New("inject: -f is required: a manifest file, or - for standard input")}
	}
	cfg, err := loadConfig(*configFile)
	if err != nil {
		return err
	}
	var in []byte
	if *file == "-" {
		in, err = io.ReadAll(stdin)
	} else {
		in, err = os.ReadFile(*file)
	}
	if err != nil {
		return fmt.Errorf("inject: read %s: %w", *file, err)
	}
	out, res, err := inject.Manifests(in, cfg)
	if err != nil {
		return fmt.Errorf("inject %s: %w", *file, err)
	}
	for _, w := range res.Warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	_, err = stdout.Write(out)
	return err
}
