package node

import (
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if len(c.Codecs) != 4 || c.MaxJobs != 1 || c.MaxQueue != 2 || c.AdvertInterval != 2*time.Second ||
		c.JobTimeout != 10*time.Minute || c.DrainTimeout != 10*time.Second || c.Device != "cpu" || c.Logger == nil {
		t.Fatalf("defaults: %+v", c)
	}
	if DefaultLocalConfig().AdvertInterval >= DefaultInternetConfig().AdvertInterval {
		t.Fatal("a local node should advertise more often than an internet one")
	}
	if err := DefaultLocalConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	if err := DefaultInternetConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string // "" = valid
	}{
		{Config{}, ""},
		{Config{Codecs: []string{"q8", "q4g64a", "bf16"}}, ""},
		{Config{Codecs: []string{"q9"}}, "Codecs"},
		{Config{Codecs: []string{"Q8"}}, "Codecs"},
		{Config{MaxJobs: 64, MaxQueue: 1024}, ""},
		{Config{MaxJobs: 65}, "MaxJobs"},
		{Config{MaxJobs: -1}, "MaxJobs"},
		{Config{MaxQueue: 1025}, "MaxQueue"},
		{Config{MaxQueue: -1}, "MaxQueue"},
		{Config{AdvertInterval: 5 * time.Millisecond}, "AdvertInterval"},
		{Config{JobTimeout: 500 * time.Millisecond}, "JobTimeout"},
		{Config{DrainTimeout: -time.Second}, "DrainTimeout"},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.cfg, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), "node.Config."+tc.want)):
			t.Errorf("%+v: got %v, want an error naming %s", tc.cfg, err, tc.want)
		}
	}
}
