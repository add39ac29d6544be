package main

import (
	"fmt"
	"os"

	"github.com/podmeta/podmeta/mutate"
)

// loadConfig reads the injection defaults shared by serve and inject: the
// built-in defaults without a file, else the file merged over them (unknown
// keys are errors, see mutate.ParseConfig).
func loadConfig(path string) (mutate.Config, error) {
	if path == "" {
		cfg := mutate.DefaultConfig()
		return cfg, cfg.Validate()
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return mutate.Config{}, fmt.Errorf("read --config: %w", err)
	}
	cfg, err := mutate.ParseConfig(data)
	if err != nil {
		return mutate.Config{}, fmt.Errorf("--config %s: %w", path, err)
	}
	return cfg, nil
}
