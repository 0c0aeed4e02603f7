-- Partition maintenance and retention of the attempt log
-- (sql/schema/functions/run_maintenance.sql): keep $1 seconds, partitions of
-- $2 seconds, $3 of them ahead. Returns a JSON report; ran = false when
-- another caller holds the maintenance lock. (justify_hours: whole days
-- read as days in the report, never as months, which vary in length.)
SELECT webhooks.run_maintenance(justify_hours(make_interval(secs => $1)),
                                justify_hours(make_interval(secs => $2)), $3)
       AS "report!"
