package mutate_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/mutate"
)

func TestSkipString(t *testing.T) {
	for _, tt := range []struct {
		skip mutate.Skip
		want string
	}{
		{mutate.Skip{What: "env", Container: "app", Name: "POD_NAME", Reason: mutate.ReasonUserDefined}, "skipped env POD_NAME in container app: user-defined"},
		{mutate.Skip{What: "ambassador", Name: "podmeta-ambassador", Reason: mutate.ReasonHostNetwork}, "skipped ambassador podmeta-ambassador: host network"},
		{mutate.Skip{What: "mount", Container: "app", Name: "/etc/podinfo", Reason: mutate.ReasonMountPathInUse, Detail: "volume x"}, "skipped mount /etc/podinfo in container app: mount path in use (volume x)"},
	} {
		assert.Equal(t, tt.want, tt.skip.String())
	}
}

// Status writes what encoding/json writes (nil Injected as []).
func TestStatusJSON(t *testing.T) {
	assert.Equal(t, `{"injected":[]}`, mutate.Report{}.Status())
	r := mutate.Report{OptedIn: true, Changed: true, Injected: []string{"env"}, Containers: []string{"app"},
		Skips: []mutate.Skip{{What: "volume", Name: "podmeta", Reason: mutate.ReasonUserDefined}}}
	assert.Equal(t, `{"injected":["env"],"containers":["app"],"skips":[{"what":"volume","name":"podmeta","reason":"user-defined"}]}`, r.Status())

	for _, r := range []mutate.Report{
		{Injected: []string{}},
		{Injected: []string{"env", "volume", "ambassador"}, Containers: []string{"app", "init-é", "a<b>&\"q\\"}},
		{Injected: []string{"env"}, Skips: []mutate.Skip{
			{What: "env", Container: "app", Name: "POD_NAME", Reason: mutate.ReasonUserDefined},
			{What: "mount", Container: "c", Name: "/etc/podinfo", Reason: mutate.ReasonMountPathInUse, Detail: "volume \"x\"\n\u2028"},
			{What: "ambassador", Reason: mutate.ReasonHostNetwork},
		}},
		{Skips: []mutate.Skip{{}}},
	} {
		want := r
		if want.Injected == nil {
			want.Injected = []string{}
		}
		j, err := json.Marshal(want)
		require.NoError(t, err)
		assert.Equal(t, string(j), r.Status())
	}
}
