package mutate_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/mutate"
)

func TestDefaultConfigValid(t *testing.T) {
	require.NoError(t, mutate.DefaultConfig().Validate())
}

func TestParseConfig(t *testing.T) {
	cfg, err := mutate.ParseConfig([]byte("envNames:\n  podIP: MY_IP\nambassador:\n  port: 9000\n"))
	require.NoError(t, err)
	assert.Equal(t, "MY_IP", cfg.EnvNames[mutate.EnvPodIP])
	assert.Equal(t, "POD_NAME", cfg.EnvNames[mutate.EnvPodName], "keys not in the file keep their defaults")
	assert.Equal(t, 9000, cfg.Ambassador.Port)
	assert.True(t, cfg.Ambassador.NativeSidecar)

	cfg, err = mutate.ParseConfig([]byte("envNames:\n"))
	require.NoError(t, err)
	assert.Equal(t, mutate.DefaultConfig().EnvNames, cfg.EnvNames, "an empty envNames key keeps the defaults")

	_, err = mutate.ParseConfig([]byte("mountDir: /x\n"))
	assert.ErrorContains(t, err, `unknown field "mountDir"`)
	_, err = mutate.ParseConfig([]byte("ambassador: [\n"))
	assert.ErrorContains(t, err, "parse config")
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*mutate.Config)
		want   string
	}{
		{"unknown env key", func(c *mutate.Config) { c.EnvNames["podIp"] = "X" }, `config envNames: unknown key "podIp"`},
		{"bad env name", func(c *mutate.Config) { c.EnvNames[mutate.EnvPodIP] = "POD-IP" }, `config envNames.podIP: "POD-IP" is not a valid env var name`},
		{"duplicate env name", func(c *mutate.Config) { c.EnvNames[mutate.EnvPodIP] = "HOST_IP" }, `name "HOST_IP" is also used by`},
		{"prefix", func(c *mutate.Config) { c.EnvPrefix = "9X" }, `config envPrefix: "9X"`},
		{"relative mount path", func(c *mutate.Config) { c.MountPath = "podinfo" }, `config mountPath: "podinfo": want an absolute path`},
		{"root mount path", func(c *mutate.Config) { c.MountPath = "/" }, `config mountPath: "/": mounting over / would hide`},
		{"unclean mount path", func(c *mutate.Config) { c.MountPath = "/etc//podinfo/" }, `want a clean absolute path ("/etc/podinfo")`},
		{"volume name", func(c *mutate.Config) { c.VolumeName = "Pod_Meta" }, `config volumeName: "Pod_Meta"`},
		{"volume name taken", func(c *mutate.Config) { c.VolumeName = mutate.APIAccessVolumeName }, `the ambassador's token volume`},
		{"no image", func(c *mutate.Config) { c.Ambassador.Image = "" }, `config ambassador.image: must not be empty`},
		{"pull policy", func(c *mutate.Config) { c.Ambassador.ImagePullPolicy = "Sometimes" }, `config ambassador.imagePullPolicy: "Sometimes"`},
		{"port", func(c *mutate.Config) { c.Ambassador.Port = 65535 }, `config ambassador.port: 65535: want a port number 1-65534`},
		{"policy", func(c *mutate.Config) { c.Ambassador.Policy = "all" }, `config ambassador.policy: "all" is not one of read-only, full, allow-list`},
		{"allow rules", func(c *mutate.Config) { c.Ambassador.Allow = "GET api" }, `config ambassador.allow: allow rule 1 "GET api"`},
		{"allow-list without rules", func(c *mutate.Config) { c.Ambassador.Policy = mutate.PolicyAllowList }, `without allow rules`},
		{"request above limit", func(c *mutate.Config) {
			c.Ambassador.Resources.Requests["memory"] = c.Ambassador.Resources.Limits["memory"].DeepCopy()
			c.Ambassador.Resources.Limits["memory"] = c.Ambassador.Resources.Requests["cpu"]
		}, `config ambassador.resources: memory request`},
		{"token expiry", func(c *mutate.Config) { c.Ambassador.TokenExpirationSeconds = 60 }, `config ambassador.tokenExpirationSeconds: 60 is below`},
		{"negative shutdown delay", func(c *mutate.Config) { c.Ambassador.ShutdownDelaySeconds = -1 }, `config ambassador.shutdownDelaySeconds: -1 is outside 0..300`},
		{"long shutdown delay", func(c *mutate.Config) { c.Ambassador.ShutdownDelaySeconds = 301 }, `config ambassador.shutdownDelaySeconds: 301 is outside 0..300`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mutate.DefaultConfig()
			tt.change(&cfg)
			assert.ErrorContains(t, cfg.Validate(), tt.want)
		})
	}
	// Several problems are reported together.
	cfg := mutate.DefaultConfig()
	cfg.Ambassador.Port = 0
	cfg.MountPath = ""
	err := cfg.Validate()
	assert.ErrorContains(t, err, "config mountPath")
	assert.ErrorContains(t, err, "config ambassador.port")
	// A disabled variable needs no valid name.
	cfg = mutate.DefaultConfig()
	cfg.EnvNames[mutate.EnvHostIP] = ""
	assert.NoError(t, cfg.Validate())
}
