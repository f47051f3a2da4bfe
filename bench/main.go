package main

import (
	_ "github.com/hibiken/asynq"
	_ "github.com/kiq-go/kiq/broker"
	_ "github.com/redis/go-redis/v9"
)

func main() {}
